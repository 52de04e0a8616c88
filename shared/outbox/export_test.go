package outbox

// RequestHash lets the tests write an idempotency record as Create would.
var RequestHash = requestHash
