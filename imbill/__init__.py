"""imbill."""
