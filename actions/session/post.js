require('../_shim/shim.js').run('session-post');
