"""Tests of the checkpoint codec, store and command."""
