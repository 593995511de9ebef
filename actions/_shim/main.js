require('./shim.js').run('main');
