"""The real services the suite stands on are there and answer."""

import boto3


def test_postgres_database_is_fresh_and_writable(postgres_db):
    import psycopg2

    conn = psycopg2.connect(host=postgres_db["host"], port=postgres_db["port"], user=postgres_db["user"],
                            dbname=postgres_db["db"])
    with conn, conn.cursor() as cur:
        cur.execute("create table t (x int)")
        cur.execute("insert into t values (41), (1)")
        cur.execute("select sum(x) from t")
        assert cur.fetchone()[0] == 42
    conn.close()


def test_s3_endpoint_round_trip(s3_env):
    s3 = boto3.client("s3", endpoint_url=s3_env["R2_ENDPOINT_URL"], aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")
    s3.put_object(Bucket=s3_env["bucket"], Key="a/b.txt", Body=b"hello")
    assert s3.get_object(Bucket=s3_env["bucket"], Key="a/b.txt")["Body"].read() == b"hello"
