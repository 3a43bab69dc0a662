"""Same-init merging of task models fine-tuned from one base (configs, methods, session), the multitask bound, hybrids.
May import mudsc's errors, data, device, evaluate, methods, models, unitgraph, diffinit, zoo; never cli or studio."""
from mudsc.sameinit.config import SameInitConfig
from mudsc.sameinit.merge import merge_same_init
from mudsc.sameinit.session import SameInitSession

__all__ = ["SameInitConfig", "SameInitSession", "merge_same_init"]
