"""Pages and helpers for the browser tests (tests/test_browser.py)."""
