"""Test-bed tools for the batchcompute operator: an emulator of the Azure ML workspace API."""
