require('./shim.js').run('post');
