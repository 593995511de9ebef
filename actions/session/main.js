require('../_shim/shim.js').run('session-main');
