// Public API of the web environment.
export { EnvPool, type Episode, type PoolStats } from './pool.js';
export { BrowserEnv } from './browserEnv.js';
export { listTasks, TaskCatalog, BUILTIN_TASKS_DIR, resolveMiniwobRoot } from './suites.js';
export { parseAction, formatAction, ActionParseError, ACTION_NAMES, type ParsedAction, type ActionName } from './actions/parser.js';
export { validActionsFor } from './observation/observe.js';
export { EnvCrashError, UnknownTaskError, resolveEnvOptions, type Observation, type EnvOptions, type ObserveOptions } from './types.js';
