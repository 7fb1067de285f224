"""The spec: its schema, cross-field rules, loading and the checks against the files it names."""
