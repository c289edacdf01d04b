"""Calls the gateway with Tencent Cloud's official Python SDK, as an existing
client would after changing only its endpoint. Prints one JSON line per call.

Usage: official_sdk_client.py HOST:PORT PLATFORM_ID MNP_ID [MNP_ID ...]
"""
import json
import sys

from tencentcloud.common import credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.tcsas.v20250106 import models, tcsas_client


def main():
    endpoint, platform_id, mnp_ids = sys.argv[1], sys.argv[2], sys.argv[3:]
    http_profile = HttpProfile(endpoint=endpoint, reqTimeout=30)
    http_profile.scheme = "http"
    # The client's own credentials: the gateway ignores them and signs with its own.
    cred = credential.Credential("AKIDclientSideIgnored", "client-side-secret-ignored")
    client = tcsas_client.TcsasClient(cred, "ap-singapore", ClientProfile(httpProfile=http_profile))
    for mnp_id in mnp_ids:
        request = models.DescribeMNPOfflinePackageURLRequest()
        request.from_json_string(json.dumps({"PlatformId": platform_id, "MNPId": mnp_id}))
        try:
            response = client.DescribeMNPOfflinePackageURL(request)
            print(json.dumps({"mnp": mnp_id, "url": response.Data.Data, "request_id": response.RequestId}))
        except TencentCloudSDKException as e:
            print(json.dumps({"mnp": mnp_id, "code": e.get_code(), "message": e.get_message(), "request_id": e.get_request_id()}))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
