"""Training data: reading files, validating records, tokenizing, batching."""
from .collate import packed_collate, pad_collate
from .feedback import FeedbackExample, load_feedback
from .preference import PairExample, load_preferences, pair_collate, tokenize_pair
from .readers import Records, read_rows
from .records import DataError, FeedbackRecord, PreferenceRecord, SFTRecord, parse_feedback, parse_preference, parse_sft
from .sft import LoadReport, TokenizedExample, load_sft, tokenize_sft

__all__ = [
    "DataError", "LoadReport", "PairExample", "PreferenceRecord", "load_preferences", "pair_collate", "tokenize_pair", "SFTRecord", "TokenizedExample", "load_sft",
    "FeedbackExample", "FeedbackRecord", "load_feedback", "parse_feedback", "Records", "packed_collate", "pad_collate", "parse_preference", "parse_sft", "read_rows", "tokenize_sft",
]
