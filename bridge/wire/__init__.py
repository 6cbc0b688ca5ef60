"""Wire formats: parsing, framing, the OpenAI translation, names, durations."""
