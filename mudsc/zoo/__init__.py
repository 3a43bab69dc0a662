"""Training the models the project merges: the built-in demo pair, parents on class subsets, and
task models fine-tuned from one base. Imports errors, device, data, evaluate and models."""
from mudsc.zoo.demo import demo_pair, train_parent
from mudsc.zoo.finetune import finetune_parent, task_family
from mudsc.zoo.train import train_model

__all__ = ["demo_pair", "finetune_parent", "task_family", "train_model", "train_parent"]
