/**
 * A shell-builder scenario run as a process of its own, as an unprivileged user when the
 * tests run as root (root ignores permissions, and the scenario is about them). Arguments:
 * a repository, a commit, a worktree root, and optionally a leftover request directory this
 * user cannot delete. Prints one JSON line with what happened.
 *
 * 1. A build leaves a read-only directory in its worktree (as Go's module cache does): the
 *    worktree is still deleted.
 * 2. A new builder sweeps the root, where the leftover cannot be deleted: the build runs.
 */
import { readdir } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import { systemClock } from '../../src/actors/clock.js'
import { createShellBuilder } from '../../src/build/shell.js'
import type { BuildRequest } from '../../src/build/types.js'
import { gitUri } from '../../src/sourcecontrol/git-exec.js'

const [repo = '', sha = '', root = '', stuck = ''] = process.argv.slice(2)

const request = (requestId: string): BuildRequest => ({
  queue: 'main',
  requestId,
  uri: gitUri(repo, sha),
  strategy: 'full',
  signal: new AbortController().signal,
  clock: systemClock,
})

const readOnly = 'mkdir -p cache/mod && echo x > cache/mod/f && chmod -R a-w cache'
const first = await createShellBuilder({ command: readOnly, worktreeRoot: root, killGraceMs: 200 }).run(request('request/main/1'))
const leftAfterFirst = (await readdir(root)).filter((name) => !name.startsWith('.') && name !== 'request-main-9')
const second = await createShellBuilder({ command: 'true', worktreeRoot: root, killGraceMs: 200 }).run(request('request/main/10'))
process.stdout.write(
  `${JSON.stringify({ first: first.outcome, leftAfterFirst, second: second.outcome, stuckLeft: stuck !== '' && existsSync(stuck) })}\n`,
)
