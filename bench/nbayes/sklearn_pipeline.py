"""The peer of `dbatch nb run` in bench/nbayes: scikit-learn's CountVectorizer ->
TfidfTransformer -> MultinomialNB, end to end: read the files (load_files), fit, predict,
write one prediction per line. Usage: sklearn_pipeline.py TRAIN TEST OUT"""
import sys

from sklearn.datasets import load_files
from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer
from sklearn.naive_bayes import MultinomialNB
from sklearn.pipeline import Pipeline


def load(root):
    b = load_files(root, shuffle=False, encoding="utf-8", decode_error="replace")
    return b.data, [b.target_names[t] for t in b.target], b.filenames


def main():
    xtr, ytr, _ = load(sys.argv[1])
    xte, _, names = load(sys.argv[2])
    pipe = Pipeline([("vect", CountVectorizer()), ("tfidf", TfidfTransformer()), ("nb", MultinomialNB())])
    pipe.fit(xtr, ytr)
    with open(sys.argv[3], "w") as f:
        for n, p in zip(names, pipe.predict(xte)):
            f.write("%s\t%s\n" % (n, p))


if __name__ == "__main__":
    main()
