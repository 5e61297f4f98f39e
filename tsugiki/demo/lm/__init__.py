"""The demo's LM stage (EvoLLM-JP in miniature): ``stage`` runs it, ``search`` holds its budgets, data
files and search configs, ``siblings`` trains and materialises the JA and MATH LoRA siblings of the real
base, ``word_problems`` makes the corpora and the held-out problems."""
