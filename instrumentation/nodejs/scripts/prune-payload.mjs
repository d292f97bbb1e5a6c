#!/usr/bin/env node
// Removes from a production node_modules tree what Node.js never loads at run
// time: documentation, tests, examples, TypeScript sources and declarations,
// source maps, and the bundler-only ESM builds of the @opentelemetry packages
// (their package.json "exports" send Node to build/src; "module"/"esnext" are
// conditions only bundlers use). Licence and notice files are kept.
//
// Usage: node prune-payload.mjs <node_modules dir>
// Prints "<files removed> <bytes removed>".

import fs from 'node:fs';
import path from 'node:path';

const root = process.argv[2];
if (!root || !fs.existsSync(root)) {
  console.error(`usage: prune-payload.mjs <node_modules dir> (got ${root})`);
  process.exit(64);
}

// Directories removed at the top of a package only (deeper, a "doc" or "test"
// directory can be code: yaml has dist/doc/).
const PACKAGE_DIRS = new Set([
  'test', 'tests', '__tests__', 'spec', 'docs', 'doc', 'example', 'examples',
  'benchmark', 'benchmarks', 'bench', 'coverage', '.github', '.vscode', '.idea',
]);
// Bundler-only builds, in @opentelemetry/* packages only.
const OTEL_BUILD_DIRS = ['build/esm', 'build/esnext'];

const KEEP_FILE = /^(licen[cs]e|notice|copying|authors|patents)([.-].*)?$/i;
const DROP_FILE = [
  /\.(md|markdown|mkd)$/i,
  /\.(ts|mts|cts)$/i, // TypeScript sources and .d.ts declarations
  /\.(js|mjs|cjs|css|ts|mts|cts)\.map$/i, // source maps, including .d.ts.map
  /\.tsbuildinfo$/i,
  /^(changelog|changes|history)(\..*)?$/i,
  /^(readme)(\..*)?$/i,
  /^\.(npmignore|eslintrc.*|eslintignore|prettierrc.*|prettierignore|editorconfig|travis\.yml|nycrc.*|gitattributes|jshintrc|airtap\.yml|taprc)$/i,
  /^(tsconfig.*\.json|tslint\.json|\.?jest\.config\..*|karma\.conf\..*|Makefile|Gruntfile\.js|gulpfile\.js)$/,
];

let files = 0;
let bytes = 0;

function sizeOf(p) {
  const st = fs.lstatSync(p);
  if (!st.isDirectory()) return { files: 1, bytes: st.size };
  let f = 0;
  let b = 0;
  for (const e of fs.readdirSync(p)) {
    const s = sizeOf(path.join(p, e));
    f += s.files;
    b += s.bytes;
  }
  return { files: f, bytes: b };
}

function remove(p) {
  const s = sizeOf(p);
  files += s.files;
  bytes += s.bytes;
  fs.rmSync(p, { recursive: true, force: true });
}

/** Every package directory in a node_modules directory (scoped ones too). */
function packagesIn(nodeModules) {
  const out = [];
  for (const e of fs.readdirSync(nodeModules, { withFileTypes: true })) {
    if (!e.isDirectory() || e.name === '.bin') continue;
    const p = path.join(nodeModules, e.name);
    if (e.name.startsWith('@')) {
      for (const s of fs.readdirSync(p, { withFileTypes: true })) {
        if (s.isDirectory()) out.push({ dir: path.join(p, s.name), name: `${e.name}/${s.name}` });
      }
    } else if (!e.name.startsWith('.')) {
      out.push({ dir: p, name: e.name });
    }
  }
  return out;
}

function pruneFiles(dir) {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) {
      pruneFiles(p);
    } else if (!KEEP_FILE.test(e.name) && DROP_FILE.some((re) => re.test(e.name))) {
      remove(p);
    }
  }
}

function prunePackages(nodeModules) {
  for (const { dir, name } of packagesIn(nodeModules)) {
    for (const d of PACKAGE_DIRS) {
      const p = path.join(dir, d);
      if (fs.existsSync(p) && fs.lstatSync(p).isDirectory()) remove(p);
    }
    if (name.startsWith('@opentelemetry/')) {
      for (const d of OTEL_BUILD_DIRS) {
        const p = path.join(dir, d);
        if (fs.existsSync(p)) remove(p);
      }
    }
    const nested = path.join(dir, 'node_modules');
    if (fs.existsSync(nested)) prunePackages(nested);
  }
}

prunePackages(root);
pruneFiles(root);
// Command-line shims of dependencies are not used by the preload.
const bin = path.join(root, '.bin');
if (fs.existsSync(bin)) remove(bin);
process.stdout.write(`${files} ${bytes}\n`);
