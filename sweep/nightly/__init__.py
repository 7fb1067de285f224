"""One night of `sweep nightly`: run, report, compare with last night, trend, notify."""
