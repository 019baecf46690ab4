"""Image data: sources (folder, list file, LMDB), the shared decoder, and the manifest scan."""
