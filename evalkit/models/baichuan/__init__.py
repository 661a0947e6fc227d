"""Native Baichuan-7B/13B and Baichuan2 ports: checkpoint recognition and weights (checkpoint), the model
classes (model), ALiBi (alibi), the SentencePiece tokenizer (tokenizer), quantize() (quantize)."""
