//! A segment tree over one protocol's ports that finds free blocks quickly.
