"""Model families on Megatron-Core, one package each (registered in ``megatron_vopd.architecture``),
and what they share: layer specs and TransformerConfig settings (``specs``), attention masks."""
