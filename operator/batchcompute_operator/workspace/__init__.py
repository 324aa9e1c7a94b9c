"""The Azure ML workspace API (ARM): one paced, retrying client and a bulk observer."""
