"""Shared building blocks: untrusted image bytes to grey pixels, the one preprocessing, pinned CPU kernels."""
