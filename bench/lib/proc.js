// @ts-check
'use strict';

/**
 * What the kernel says about a process, read from /proc (Linux only): CPU
 * time, resident memory, children. Reading /proc costs the measured
 * processes nothing, unlike asking them (PM2's `monit` samples by signal).
 */
const fs = require('node:fs');
const { execFileSync } = require('node:child_process');

/** Clock ticks per second, the unit of utime/stime in /proc/<pid>/stat. */
const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/**
 * The fields of /proc/<pid>/stat after the command name; the name is in
 * parentheses and may itself hold spaces or parentheses, hence lastIndexOf.
 * @param {number} pid
 * @returns {string[] | undefined} undefined once the process is gone
 */
function statFields(pid) {
  let text;
  try {
    text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  return text.slice(text.lastIndexOf(')') + 2).split(' ');
}

/**
 * User + system CPU time of a process (all its threads), in microseconds.
 * @param {number} pid
 * @returns {number} 0 once the process is gone
 */
function cpuMicros(pid) {
  const fields = statFields(pid);
  if (fields === undefined) return 0;
  // After the name: state(0) ppid(1) ... utime(11) stime(12), i.e. fields 14 and 15 of proc(5).
  const ticks = Number(fields[11]) + Number(fields[12]);
  return (ticks * 1e6) / CLK_TCK;
}

/**
 * Total CPU time of several processes, in microseconds.
 * @param {readonly number[]} pids
 */
function totalCpuMicros(pids) {
  return pids.reduce((sum, pid) => sum + cpuMicros(pid), 0);
}

/**
 * Resident set size, in MB (VmRSS of /proc/<pid>/status).
 * @param {number} pid
 * @returns {number | undefined}
 */
function rssMb(pid) {
  try {
    const match = /^VmRSS:\s+(\d+)\s+kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match ? Number(match[1]) / 1024 : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The direct children of a process, found by scanning every /proc/<pid>/stat
 * for its parent pid (/proc/<pid>/task/<pid>/children is not on every kernel).
 * @param {number} parent
 * @returns {number[]}
 */
function childrenOf(parent) {
  const children = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const fields = statFields(Number(entry));
    if (fields !== undefined && Number(fields[1]) === parent) children.push(Number(entry));
  }
  return children;
}

/**
 * CPU time the whole machine spent busy (every core; idle and iowait
 * excluded), in microseconds, from the first line of /proc/stat.
 */
function machineBusyMicros() {
  const line = fs.readFileSync('/proc/stat', 'utf8').split('\n', 1)[0] ?? '';
  // cpu  user nice system idle iowait irq softirq steal guest guest_nice
  const [user = 0, nice = 0, system = 0, , , irq = 0, softirq = 0, steal = 0] = line.trim().split(/\s+/).slice(1).map(Number);
  return ((user + nice + system + irq + softirq + steal) * 1e6) / CLK_TCK;
}

/**
 * This process's CPU time, and that of its children that have exited and
 * been waited for (the load generator, once it is done), in microseconds.
 * @returns {{ self: number, children: number }}
 */
function selfAndChildrenMicros() {
  const fields = statFields(process.pid) ?? [];
  const ticks = (/** @type {number} */ i) => Number(fields[i] ?? 0);
  // After the name: utime(11) stime(12) cutime(13) cstime(14).
  return { self: ((ticks(11) + ticks(12)) * 1e6) / CLK_TCK, children: ((ticks(13) + ticks(14)) * 1e6) / CLK_TCK };
}

/**
 * Whether a process exists (and is not a zombie waiting to be reaped).
 * @param {number} pid
 */
function alive(pid) {
  const fields = statFields(pid);
  return fields !== undefined && fields[0] !== 'Z';
}

/** How often the workers' RSS is read during a load. */
const RSS_EVERY_MS = 500;

/**
 * Reads the workers' RSS every RSS_EVERY_MS until stopped: a worker's RSS
 * saw-tooths between mark-compacts (by tens of MB with buffers awaiting
 * one), so one reading at the end of a load lands anywhere on the tooth.
 * @param {readonly number[]} pids
 * @returns {() => { meanMb: number, peakMb: number }}  stops, and returns the
 *   mean over the readings of the workers' mean, and the largest reading of any worker
 */
function sampleRss(pids) {
  /** @type {number[]} */
  const means = [];
  let peak = -Infinity;
  const read = () => {
    const values = pids.map(rssMb).filter((value) => value !== undefined);
    if (values.length === 0) return;
    means.push(values.reduce((a, b) => a + b, 0) / values.length);
    peak = Math.max(peak, ...values);
  };
  const timer = setInterval(read, RSS_EVERY_MS);
  return () => {
    clearInterval(timer);
    read();
    return means.length === 0 ? { meanMb: NaN, peakMb: NaN } : { meanMb: means.reduce((a, b) => a + b, 0) / means.length, peakMb: peak };
  };
}

module.exports = { cpuMicros, totalCpuMicros, rssMb, sampleRss, childrenOf, alive, machineBusyMicros, selfAndChildrenMicros, CLK_TCK };
