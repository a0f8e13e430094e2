"""The release gate: `fbcompress check`, a candidate against its teacher."""
