"""Integrations with other libraries, each imported only when used
(``mono_quant.integrations.transformers`` needs the ``transformers`` package)."""
__all__: list = []
