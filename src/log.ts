/**
 * A minimal structured logger: one JSON object per line, so `pm2 logs` shows
 * one readable line per event and log shippers can parse it.
 */

type Fields = Record<string, unknown>;

function write(stream: NodeJS.WriteStream, level: string, msg: string, fields?: Fields): void {
  const line: Fields = { level, time: new Date().toISOString(), pid: process.pid, msg, ...fields };
  stream.write(`${JSON.stringify(line, errorReplacer)}\n`);
}

/** Errors serialise to their name, message and stack instead of `{}`. */
function errorReplacer(_key: string, value: unknown): unknown {
  if (value instanceof Error) return { type: value.name, message: value.message, stack: value.stack };
  return value;
}

export const log = {
  info: (msg: string, fields?: Fields): void => write(process.stdout, 'info', msg, fields),
  warn: (msg: string, fields?: Fields): void => write(process.stderr, 'warn', msg, fields),
  error: (msg: string, fields?: Fields): void => write(process.stderr, 'error', msg, fields),
};

export type Logger = typeof log;
