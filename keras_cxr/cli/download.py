"""`keras-cxr download`: a Kaggle competition (or its files downloaded by hand) as a keras-cxr data folder."""

import click

from keras_cxr.cli._common import Reported, UserError


@click.command()
@click.option("--competition", help="Kaggle competition name, as in its URL (downloaded with kagglehub).")
@click.option("--from", "raw_dir", type=click.Path(file_okay=False),
              help="Normalise a competition's files already on disk instead of downloading.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Data folder to write: train.csv, val.csv, test.csv, download.json (downloads go to OUT/raw).")
@click.option("--val-fraction", type=click.FloatRange(min=0, max=0.5, min_open=True), default=None,
              help="Split train (+ the competition's val) again, this fraction to val "
                   "[default: keep the competition's val CSV; 0.1 without one or with a grouping].")
@click.option("--group-by", metavar="COLUMN", help="Split train + val again by patient: rows sharing this column's "
                                                   "value stay on one side.")
@click.option("--group-regex", metavar="REGEX", help="Split train + val again by patient: the patient is this "
                                                     "pattern's first capture group in each filename, e.g. "
                                                     "'(person\\d+)_'.")
@click.option("--seed", default=42, show_default=True, type=int, help="Seed of the train/val split.")
@click.option("--overwrite", is_flag=True, help="Replace the CSVs of an earlier download in --out.")
def download(competition, raw_dir, out_dir, val_fraction, group_by, group_regex, seed, overwrite):
    """Download a Kaggle competition and write it as a keras-cxr data folder (train/val/test CSVs)."""
    from keras_cxr.kaggle import KaggleError, download_competition, normalize_competition

    if (competition is None) == (raw_dir is None):
        raise UserError("give --competition NAME to download, or --from DIR for files already downloaded")
    options = dict(val_fraction=val_fraction, group_by=group_by, group_regex=group_regex, seed=seed,
                   overwrite=overwrite)
    with Reported(KaggleError):
        if raw_dir is None:
            click.echo(f"Downloading {competition} from Kaggle into {out_dir}/raw ...", err=True)
            data = download_competition(competition, out_dir, **options)
        else:
            data = normalize_competition(raw_dir, out_dir, **options)
    click.echo(data.summary())
    click.echo(f"Train on it: keras-cxr fit RECIPE --data-dir {out_dir}")
