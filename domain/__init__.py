"""The domain: config model, events, rules. Imports nothing else of imbill."""
