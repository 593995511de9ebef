// The only JavaScript in Airlock's actions: install the private venv (install.sh), then hand
// over to the Python CLI (`python -P -m airlock._commands.ci action PHASE`). Node is here for one
// reason: a JavaScript action can declare a `post:` step with `post-if: always()`, which runs
// after the job's other steps even when they failed or the job was cancelled. Composite
// actions cannot. Signals are forwarded so the recorder can seal before it exits.
'use strict';
const { spawn, spawnSync } = require('child_process');
const os = require('os');
const path = require('path');

function install() {
  const env = { ...process.env };
  if (process.env.INPUT_PYTHON) env.AIRLOCK_PYTHON = process.env.INPUT_PYTHON;
  const done = spawnSync('bash', [path.join(__dirname, 'install.sh')], {
    env,
    stdio: ['ignore', 'pipe', 'inherit'],
    encoding: 'utf8',
  });
  if (done.status !== 0) {
    process.exitCode = done.status === null ? 85 : done.status;
    return null;
  }
  return done.stdout.trim().split('\n').pop();
}

// The post step has nothing to do when main never started or did its duties itself, which is
// every job that was not cancelled (GitHub hands post what main saved, as STATE_*). Python
// checks the same (_action_post); testing it here spares post the install check and a start.
function nothingToDo(phase) {
  const state = process.env;
  return phase === 'post' && (state.STATE_started !== '1' || state.STATE_finalized === '1');
}

function run(phase) {
  if (nothingToDo(phase)) return;
  const python = install();
  if (!python) return;
  // The running action's own action.yml: Python refuses inputs it does not declare.
  const env = { ...process.env };
  if (phase === 'main') env.AIRLOCK_ACTION_YML = path.join(__dirname, '..', '..', 'action.yml');
  if (phase === 'session-main') {
    env.AIRLOCK_ACTION_YML = path.join(__dirname, '..', 'session', 'action.yml');
  }
  // -P: the working directory is the checkout, which the agent and the pull request write; an
  // `airlock/` package there would be imported instead of Airlock (python -m puts it first).
  const child = spawn(python, ['-P', '-m', 'airlock._commands.ci', 'action', phase], {
    stdio: 'inherit',
    env,
  });
  for (const name of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.on(name, () => child.kill(name));
  }
  child.on('exit', (code, signal) => {
    process.exitCode = code === null ? 128 + (os.constants.signals[signal] || 0) : code;
  });
}

module.exports = { run };
