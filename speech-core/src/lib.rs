//! speech-core: filled in by its issue.
