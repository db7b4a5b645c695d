//! speech-azure: filled in by its issue.
