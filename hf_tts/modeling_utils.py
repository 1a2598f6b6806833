"""The model base every `hf_tts` model extends.

One place for behaviour all families share on top of `transformers.PreTrainedModel`: the Hub push uploads the
package's generated model card in the same commit as the weights (transformers' own `push_to_hub` would write its
default `library_name: transformers` README instead).
"""

from __future__ import annotations

import tempfile

from huggingface_hub import CommitInfo
from transformers import PreTrainedModel

from hf_tts.configuration_utils import HfTtsConfig


class HfTtsPreTrainedModel(PreTrainedModel):
    config_class = HfTtsConfig
    base_model_prefix = "model"

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str = "50GB",
        tags: str | list[str] | None = None,
    ) -> CommitInfo:
        """Upload the model to `repo_id` with its generated model card, in one commit.

        Same keywords as `transformers.PreTrainedModel.push_to_hub`; `revision` is a branch (created from main when
        missing). The card is rendered from `model_cards/<kind>.md.j2` for this model's config, with `tags` and the
        model's `model_tags` added to its front matter.
        """
        from hf_tts.hub.cards import kind_for_config, write_model_card
        from hf_tts.hub.push import push_folder

        extra_tags = [*(self.model_tags or []), *([tags] if isinstance(tags, str) else tags or [])]
        with tempfile.TemporaryDirectory(prefix="hf-tts-push-") as folder:
            self.save_pretrained(folder, max_shard_size=max_shard_size)
            write_model_card(
                folder, kind=kind_for_config(self.config), config=self.config, model_id=repo_id, tags=extra_tags
            )
            return push_folder(
                folder,
                repo_id,
                private=bool(private),
                revision=revision,
                commit_message=commit_message or f"Upload {type(self).__name__}",
                commit_description=commit_description,
                token=token,
                create_pr=create_pr,
            )
