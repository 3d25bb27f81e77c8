"""The extracted model: a Hugging Face ``PreTrainedModel`` that loads without nasbert.

Importing this package registers the classes with the ``Auto*`` factories, so an exported directory loads with
plain ``AutoModel.from_pretrained(dir)`` once nasbert is imported (and with ``trust_remote_code=True`` without it).
"""

from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification

from .configuration_nasbert import NasBertConfig
from .modeling_nasbert import NasBertForMaskedLM, NasBertForSequenceClassification, NasBertModel

__all__ = ["NasBertConfig", "NasBertModel", "NasBertForMaskedLM", "NasBertForSequenceClassification"]

AutoConfig.register("nasbert", NasBertConfig, exist_ok=True)
AutoModel.register(NasBertConfig, NasBertModel, exist_ok=True)
AutoModelForMaskedLM.register(NasBertConfig, NasBertForMaskedLM, exist_ok=True)
AutoModelForSequenceClassification.register(NasBertConfig, NasBertForSequenceClassification, exist_ok=True)

# save_pretrained() copies the modeling files next to the weights and writes config.auto_map.
NasBertConfig.register_for_auto_class()
NasBertModel.register_for_auto_class("AutoModel")
NasBertForMaskedLM.register_for_auto_class("AutoModelForMaskedLM")
NasBertForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
