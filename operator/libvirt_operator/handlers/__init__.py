"""kopf handlers: start-up, VM reconciliation, node readiness."""
