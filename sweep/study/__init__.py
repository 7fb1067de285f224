"""The durable study: Optuna storage, leases, the spool, fingerprints, recording and the trials table."""
