//! Exchange -> span: ids, timing, HTTP semantic-convention attributes, status, parent context.
