"""The code location: `dagster dev -w workspace.yaml`, `dagster asset materialize -m neucodec_assets.definitions`.

The settings that shape definitions (the backfill policy, sensor intervals, schedules, the automation switch) are
read here, once, when the code location loads; every other setting is read when a run or a tick starts (resources,
``gpu_executor.settings``). Asset and sensor definitions show the values in effect as their metadata. Runs execute
in one process: a run's shards share one loaded model, and the GPU run launcher's CUDA_VISIBLE_DEVICES applies to
the process that encodes.
"""

from __future__ import annotations

import dagster as dg

from gpu_executor.settings import Settings, load_settings
from neucodec_assets.automation import automation_sensor, capped_tokens_condition, dataset_condition
from neucodec_assets.fleet.sensor import fleet_sizing_sensor
from neucodec_assets.progress.alerts import alert_sensor
from neucodec_assets.progress.asset import (
    encoding_progress,
    encoding_progress_after_backfills,
    encoding_progress_job,
    progress_schedule,
)
from neucodec_assets.sft import SftResource, sft_dataset, sft_pairs
from neucodec_assets.tokens.asset import (
    RUN_SETTING_GROUPS,
    backfill_policy,
    neucodec_tokens,
    neucodec_tokens_checks,
)
from neucodec_assets.tokens.discovery_sensor import discovery_sensor
from neucodec_assets.tokens.job import neucodec_tokens_job
from neucodec_assets.tokens.run_size import run_size
from resources.dagster_resources import BucketResource, EncoderResource


def settings_metadata(settings: Settings, groups: tuple[str, ...]) -> dg.MetadataValue:
    """The settings in effect where the code location loaded, secrets masked, as a table for the asset page."""
    rows = [dg.TableRecord({"variable": k, "value": v}) for k, v in settings.in_effect(groups).items()]
    schema = dg.TableSchema(columns=[dg.TableColumn("variable", "string"), dg.TableColumn("value", "string")])
    return dg.MetadataValue.table(rows, schema=schema)


def build_definitions(settings: Settings, instance: dg.DagsterInstance | None = None) -> dg.Definitions:
    """The definitions with the settings that shape them applied (``instance``: what `auto` run sizes read;
    default the instance of DAGSTER_HOME)."""
    size = run_size(settings, instance)
    tokens = neucodec_tokens.with_attributes(
        backfill_policy=backfill_policy(size.shards_per_run),
    ).map_asset_specs(lambda spec: spec.replace_attributes(
        automation_condition=capped_tokens_condition(size.shards_per_run, settings.automation_runs_per_slot),
    ).merge_attributes(metadata={"settings": settings_metadata(settings, RUN_SETTING_GROUPS),
                                 "shards_per_run": dg.MetadataValue.int(size.shards_per_run),
                                 "shards_per_run_from": dg.MetadataValue.text(size.why)}))
    dataset = sft_dataset.map_asset_specs(lambda spec: spec.replace_attributes(
        automation_condition=dataset_condition(settings.sft_dataset_cron),
    ).merge_attributes(metadata={"settings": settings_metadata(settings, ("sft", "automation"))}))
    return dg.Definitions(
        assets=[tokens, sft_pairs, dataset, encoding_progress],
        asset_checks=[neucodec_tokens_checks],
        jobs=[neucodec_tokens_job, encoding_progress_job],
        schedules=[progress_schedule(settings.progress_cron)],
        sensors=[discovery_sensor(settings.discovery_interval_seconds), automation_sensor(settings),
                 alert_sensor(settings.alert_webhook_url is not None), encoding_progress_after_backfills,
                 fleet_sizing_sensor(settings)],
        resources={"bucket": BucketResource(), "encoder": EncoderResource(), "sft": SftResource()},
        executor=dg.in_process_executor,
    )


defs = build_definitions(load_settings())
