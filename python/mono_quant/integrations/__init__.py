"""Integrations with other libraries, each imported only when used
(``mono_quant.integrations.transformers`` needs the ``transformers`` package,
``mono_quant.integrations.peft`` the ``peft`` package)."""
__all__: list = []
