// Entry point for `--import`, equivalent to `--require register.cjs`:
//   NODE_OPTIONS="--import /vispyr-instrumentation/register.mjs"
import { createRequire } from 'node:module';

createRequire(import.meta.url)('./src/register.cjs');
