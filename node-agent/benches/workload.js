// The CPU-bound workload of the overhead benchmark: the same fixed amount of
// JavaScript per iteration (a recursive function, so stacks are deep), and
// ten times a second a line "<ns since start> <iterations so far> <CPU µs
// so far> <result>" on stdout, from which the benchmark takes the throughput
// of any window, per second of wall time and per second of CPU time.
'use strict';

function fib(n) {
  return n < 2 ? n : fib(n - 1) + fib(n - 2);
}

const start = process.hrtime.bigint();
let iterations = 0;
let sink = 0;
let next = 0n;
for (;;) {
  sink = (sink + fib(20)) % 1000003;
  iterations++;
  const now = process.hrtime.bigint() - start;
  if (now >= next) {
    // Synchronous for a file, which is where the benchmark sends it.
    const cpu = process.cpuUsage();
    process.stdout.write(`${now} ${iterations} ${cpu.user + cpu.system} ${sink}\n`);
    next = now + 100_000_000n;
  }
}
