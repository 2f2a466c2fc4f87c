"""What every package may import: the wire contract between server and sites and its
encodings, atomic file writes, one-line console errors and how Flower's processes are
started. Nothing here knows about privacy, models or either side of the federation."""
