//! End-to-end tests for meshca live in tests/e2e/.
