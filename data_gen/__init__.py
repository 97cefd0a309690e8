"""The Reflection-CoT corpus pipeline on the Mistral API: generate -> reflect -> [score] -> build (docs/data_gen.md)."""
