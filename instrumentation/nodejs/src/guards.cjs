'use strict';
// Checks made before anything is loaded. Like register.cjs, written in syntax
// that old Node.js releases parse (no `?.`, `??`, optional catch binding).

// Node.js releases the SDK supports: ^18.19.0 || >=20.6.0 (the first with
// module.register, which the ESM hooks need).
function unsupportedNode(version) {
  var parts = String(version).split('.');
  var major = parseInt(parts[0], 10);
  var minor = parseInt(parts[1], 10);
  if (major > 20 || (major === 20 && minor >= 6) || (major === 18 && minor >= 19)) {
    return null;
  }
  return 'Node.js v' + version + ' is not supported (needs ^18.19.0 or >= 20.6.0)';
}

// Package-manager and tool launchers inherit NODE_OPTIONS too (`npm start`
// runs npm, which runs the application): instrumenting them would report a
// second process under the application's name. Their main script is
// recognised by its path.
var LAUNCHER = /[\\/]node_modules[\\/](npm|npx|yarn|pnpm|corepack|@yarnpkg[\\/]cli-dist)[\\/]/;
var LAUNCHER_BASENAME = /^(npm-cli|npx-cli|yarn|yarn-[0-9.]+|pnpm|pnpx|corepack)(\.c?js)?$/;

function launcher(argv1) {
  if (!argv1) return false;
  var base = String(argv1).split(/[\\/]/).pop();
  return LAUNCHER.test(String(argv1)) || LAUNCHER_BASENAME.test(base);
}

module.exports = { unsupportedNode: unsupportedNode, launcher: launcher };
