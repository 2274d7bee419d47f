"""The scikit-learn side of the classifier tests: CountVectorizer -> TfidfTransformer ->
MultinomialNB with default parameters on a labelled-directory corpus, documents decoded as
UTF-8 with errors='replace'. Usage: nb_reference.py TRAIN_DIR TEST_DIR [DIGITS]
Prints JSON: vocabulary size, predictions, probabilities, classes and the report."""
import json
import sys

from sklearn.datasets import load_files
from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer
from sklearn.metrics import classification_report
from sklearn.naive_bayes import MultinomialNB
from sklearn.pipeline import Pipeline


def docs(root):
    b = load_files(root, shuffle=False, encoding=None)
    texts = [d.decode("utf-8", errors="replace") for d in b.data]
    labels = [b.target_names[t] for t in b.target]
    return texts, labels, list(b.filenames)


def main():
    train, test = sys.argv[1], sys.argv[2]
    digits = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    xtr, ytr, _ = docs(train)
    xte, yte, names = docs(test)
    pipe = Pipeline([("vect", CountVectorizer()), ("tfidf", TfidfTransformer()), ("nb", MultinomialNB())])
    pipe.fit(xtr, ytr)
    pred = pipe.predict(xte)
    proba = pipe.predict_proba(xte)
    json.dump({
        "vocabulary": len(pipe.named_steps["vect"].vocabulary_),
        "classes": list(pipe.classes_),
        "names": names,
        "pred": list(pred),
        "proba": proba.tolist(),
        "report": classification_report(yte, pred, digits=digits, zero_division=0),
    }, sys.stdout)


if __name__ == "__main__":
    main()
