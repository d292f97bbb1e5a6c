'use strict';
// Stable entry point of the Vispyr Node.js instrumentation payload:
//   NODE_OPTIONS="--require /vispyr-instrumentation/register.cjs"
// Kept tiny and syntax-neutral; the work is in src/register.cjs.
require('./src/register.cjs');
