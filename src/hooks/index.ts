/**
 * Hooks: `onVerdict` and `onLastGreen`, delivered at least once from a persisted outbox;
 * the dispatcher that delivers them; and the signed webhook hook.
 * @module
 */
export { createOutboxDispatcher } from './outbox-dispatcher.js'
export type { OutboxDispatcher, OutboxDispatcherOptions, OutboxDispatcherStats } from './outbox-dispatcher.js'
export { outboxIdempotencyKey, outboxPuts, validateHooks } from './outbox.js'
export type { Hook, HookContext, HookRetryOptions, LastGreenPayload, LastGreenRef, VerdictPayload } from './types.js'
export {
  WEBHOOK_IDEMPOTENCY_HEADER,
  WEBHOOK_KIND_HEADER,
  WEBHOOK_SIGNATURE_HEADER,
  createWebhookHook,
  signWebhookBody,
  verifyWebhookSignature,
} from './webhook.js'
export type { WebhookBody, WebhookHookOptions } from './webhook.js'
