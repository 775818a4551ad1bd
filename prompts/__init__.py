"""Prompt lists → ``PromptRecord``s: the first stage of the toolkit's one-way data flow."""

from prompts.errors import InputError, PromptFileError
from prompts.parse import read_prompt_file
from prompts.records import PromptRecord
from prompts.shipped import load_prompts, shipped_lists

__all__ = ["InputError", "PromptFileError", "PromptRecord", "load_prompts", "read_prompt_file", "shipped_lists"]
