"""Dataset arguments (`datasets[].args`), one entry per registered dataset. Every dataset takes `cap_shots`."""
from workers.core.schema import Arg, Schema

_CAP = Arg("bool", False, "take every image of a class with fewer than `shots` instead of failing the run")
_DOWNLOAD = Arg("bool", False, "let torchvision download the files into the data root")
_TEST_FRACTION = Arg("float", 0.2, "fraction of each class held out for test (seeded, stratified)", lo=0, hi=1,
                     closed="()")
_VOCAB = Arg("int", 20000, "most frequent training words kept (others are token 0)", lo=1)


def _d(help: str, **args: Arg) -> Schema:
    return Schema(help, {**args, "cap_shots": _CAP})


DATASETS = {
    "digits": _d("scikit-learn handwritten digits (bundled)", test_fraction=Arg(
        "float", 0.3, "fraction of each class held out for test", lo=0, hi=1, closed="()")),
    "shapes": _d("procedural shapes, 20 classes (generated; the demo's source task)",
                 n_train=Arg("int", 8000, "training images", lo=1), n_test=Arg("int", 2000, "test images", lo=1),
                 seed=Arg("int", 0, "generation seed")),
    "cifar10": _d("CIFAR-10", download=_DOWNLOAD),
    "svhn": _d("SVHN digits", download=_DOWNLOAD),
    "gtsrb": _d("GTSRB traffic signs", download=_DOWNLOAD),
    "dtd": _d("Describable Textures", download=_DOWNLOAD,
              partition=Arg("int", 1, "which of DTD's 10 train/test partitions", lo=1, hi=10)),
    "flowers102": _d("Oxford Flowers-102", download=_DOWNLOAD),
    "oxford_pets": _d("Oxford-IIIT Pet breeds", download=_DOWNLOAD),
    "eurosat": _d("EuroSAT RGB", download=_DOWNLOAD, test_fraction=_TEST_FRACTION),
    "caltech101": _d("Caltech-101", download=_DOWNLOAD, test_fraction=_TEST_FRACTION),
    "yelp_polarity": _d("Yelp review polarity (text)", max_vocab=_VOCAB),
    "imdb": _d("IMDB movie reviews (text)", max_vocab=_VOCAB),
    "ag_news": _d("AG News topics (text)", max_vocab=_VOCAB),
    "dbpedia14": _d("DBpedia-14 ontology classes (text)", max_vocab=_VOCAB),
    "splice": _d("UCI splice junctions (DNA)", test_fraction=_TEST_FRACTION),
}
